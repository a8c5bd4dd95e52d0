"""Figures (plotly) and views (circuitsvis) of memlens results."""
