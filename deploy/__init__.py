"""Deployment: the ``microblog`` command, the embedded runner, container images and docs."""
