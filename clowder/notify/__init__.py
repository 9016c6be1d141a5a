"""Notifications: what happened to a pipeline (it ended, failed, was blocked; a job failed, spent
its budget, spawned a fix-up), told to the commands and webhooks of its `[[notify]]` tables."""
