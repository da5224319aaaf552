"""Rooms that fit the scorer into other people's programs, on top of the core (runtime/) only:

- :mod:`.rl` — reward functions in the shapes TRL, verl and OpenRLHF call them (no framework imported);
- :mod:`.ray` — batch scoring with Ray Data and a Ray Serve deployment (needs ``rewardrt[ray]``);
  :mod:`.raycli` adds ``--ray`` to ``rewardrt score`` (importing Ray only when used).

They never import each other's rooms (cli, serve); see runtime/README.md.
"""
