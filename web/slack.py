"""Placeholder: being written."""
from flask import Blueprint

bp = Blueprint("slack", __name__)
