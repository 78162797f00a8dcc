"""Messages service: the event-sourced private messages (MessageSent, InboxRead)."""
