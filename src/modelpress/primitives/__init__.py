"""Pure tensor math, no modules."""
