"""The local lab, for bench/ and the Molecule tests (never used by the roles).

``cluster`` holds the cluster scenario's facts and how to reach it (hosts,
addresses, VIP, secrets, ``docker exec``, Molecule's inventory, playbook runs);
``loadgen`` a bounded client load and a per-node service watch; ``wire`` the
analysis of a tcpdump of nginx's two legs.
"""
