"""Paper-style tables and plots built from per-trial result files.

Empty until the engine issue adds the first table builder; it reads result files and never imports Ray.
"""
