import os, sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
from harness import *
for cov in ["full", "diag"]:
  for npc in [30, 15]:
    res = []
    for d in ALL:
        D = load(d); X = smooth(D["pcs"][:, :npc], D["nb"])
        out = [score(D, gmm(X, int(D["K"]), s, cov=cov)[0])[0] for s in range(2)]
        res.append(np.mean(out))
    print(cov, npc, np.round(res, 3), "dlpfc mean", np.mean(res[:4]).round(3), flush=True)
