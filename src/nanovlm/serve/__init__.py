"""`nanovlm serve`: the model behind an authenticated, batching HTTP API (see app.py), and its load test."""
