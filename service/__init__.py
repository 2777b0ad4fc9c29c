"""snap2shop's search service: `POST /search` with a photo returns the nearest catalogue items."""
