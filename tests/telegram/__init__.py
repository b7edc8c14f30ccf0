"""Tests of the Telegram transport against a loopback fake of the Bot API."""
