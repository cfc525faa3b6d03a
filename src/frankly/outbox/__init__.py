"""Delivery of sent messages through their channel, with retries, surviving restarts."""
