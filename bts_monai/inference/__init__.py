"""Inference: Predictor, geometry round trip, report, overlay."""
