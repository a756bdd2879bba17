"""Chat backends implementing :class:`bot.notifier.Notifier`: console (the default) and Slack."""
