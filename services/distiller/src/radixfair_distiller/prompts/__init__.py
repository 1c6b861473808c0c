"""The shipped chat prompt set (chat_prompts.jsonl), written for this project."""
