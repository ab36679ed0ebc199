"""The Gradio web page: mounted into the API at /ui, or run alone with `python -m ui --api URL`."""
