"""The bot's web pages for people: read-only incident pages behind signed, expiring links.

The engine never imports this package (``tests/test_architecture.py`` holds that); ``bot.app``
mounts the routes and the chat backends ask :class:`bot.web.links.PageLinks` for links.
"""
