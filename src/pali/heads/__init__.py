"""Task heads: each turns a task into a prompt and the generated text into a typed result."""
