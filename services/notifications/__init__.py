"""Notifications service: projects the messages events into per-user notification rows."""
