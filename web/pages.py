"""Placeholder: being written."""
from flask import Blueprint

bp = Blueprint("pages", __name__)


def error_page(status: int, message: str):
    from markupsafe import escape
    return f"<!doctype html><title>{status}</title><p>{escape(message)}</p>", status
