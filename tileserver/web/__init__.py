"""HTTP: the Flask app, one blueprint per protocol, the API, the viewer; the one place that speaks HTTP."""
