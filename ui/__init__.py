"""The Gradio web UI (mounted into the API at /ui). Not built yet: it is tracked as its own issue."""
