"""The reader's side of bookqa: the Gradio chat, the command line, and the app that puts them together."""

# Where the chat is served in the app `bookqa serve` runs.
UI_PATH = "/ui"
