"""The bridgestat coordinator: fans queries out to members and pools the releases."""
