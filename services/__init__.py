"""The microservices: users, messages, notifications. Each owns its own database."""
