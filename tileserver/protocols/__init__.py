"""Deep Zoom and IIIF: parse requests into values, describe images, plan reads. No HTTP, no pixels but IIIF's render."""
