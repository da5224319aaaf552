"""Side-by-side measurement against the PyTorch reference (needs ``rewardrt[bench]``).

    rewardrt bench --quick                      # smoke run, about 2 minutes on 2 cores
    rewardrt bench --out bench-results          # the full run (cached exports: about 15 minutes)
    rewardrt bench --checkpoint DIR --threads 1,2 --rounds 4

Layout: ``suite`` runs everything and writes the results folder; ``config`` holds the quick and
full plans; ``artifacts`` picks the checkpoint and builds (or reuses) every engine's model file;
``workloads`` builds the inputs; ``runner`` drives one ``worker`` process per engine (``engines``
says how each one loads and scores); ``results`` turns timings into medians and ratios; ``report``
writes results.md and the plots; ``system`` records the conditions and installed sizes.
"""
