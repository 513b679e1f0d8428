"""Ingest: the user's scanner output into scanstream's stores.

``images`` (crops as image files with a listing, or an image folder per class, into a crop
store) and ``stacks`` (the scanner's info.json z-stacks into an OME-Zarr volume store).
"""
