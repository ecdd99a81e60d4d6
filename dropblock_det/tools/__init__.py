"""The training tools around the DropBlock core: trainer, embedded data, evaluation, input checks,
reports and the search. ``tools/*.py`` are thin command lines over these modules.

Nothing here is needed to use DropBlock in one's own Detectron2 code; ``import dropblock_det``
does not import this package.
"""
