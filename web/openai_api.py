"""Placeholder: being written."""
from flask import Blueprint

bp = Blueprint("openai_api", __name__)
