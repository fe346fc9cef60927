"""Media: images (load, resize, cache), video (decode, sample frames), boxes (grounding), drawing and synthetic shapes."""
