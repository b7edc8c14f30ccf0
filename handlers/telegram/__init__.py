"""Telegram channel of capbot: transport and handlers built on python-telegram-bot."""
