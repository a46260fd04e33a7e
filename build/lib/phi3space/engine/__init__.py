"""What runs inside a job's process: data, tokens, models, training, merging. Never imports gradio."""
