"""Models and objectives (supervised, mean teacher, MONA, ARCO, ACTION).

Empty until the engine issue adds the UNet and the objective registry; it imports only torch and numpy.
"""
