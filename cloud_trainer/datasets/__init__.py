"""Importers for the public leaf datasets and the user's own photos (``cropwatch data import|merge``).

One module per source layout (:mod:`.plantvillage`, :mod:`.plantdoc`, :mod:`.ibean`, :mod:`.cassava`,
:mod:`.generic`) lists ``Candidate`` images; :mod:`.core` decodes, deduplicates, groups and writes them
in the form :func:`cloud_trainer.disease.dataset.load_dataset` reads (class folders plus ``index.csv``),
and :mod:`.card` writes the dataset card.
"""
