"""Running the recipe over observations.

One observation (:mod:`.observation`), many in a RAM budget (:mod:`.runner`: what a worker runs
for one of them, :mod:`.worker`; how the coordinator hands them out, :mod:`.dispatch`), the output's
life (:mod:`.lifecycle`), named runs (:mod:`.runs`) and the memory and core policy (:mod:`.budget`).
"""
