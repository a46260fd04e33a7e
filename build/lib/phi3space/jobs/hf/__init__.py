"""Hugging Face Jobs: the platform client, the job protocol, flavors and the backend."""
