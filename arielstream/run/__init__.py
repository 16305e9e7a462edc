"""Running the recipe over observations.

One observation (:mod:`.observation`), many in a RAM budget (:mod:`.runner`), the output's life
(:mod:`.lifecycle`), named runs (:mod:`.runs`) and the memory and core policy (:mod:`.budget`).
"""
