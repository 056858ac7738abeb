"""Widgets of the main screen, by pane."""
