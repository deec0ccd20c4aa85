"""The command line and the demo farm: the one package whose job is importing every component.

``shared`` (the contract), ``edge_agent``, ``cloud_trainer`` and ``farm_monitor`` never import it.
"""
