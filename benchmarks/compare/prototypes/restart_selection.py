import os, sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
from harness import *
import pickle
res = {}
for d in ALL:
    D = load(d); X = smooth(D["pcs"], D["nb"]); K = int(D["K"]); nb = D["nb"]
    rows = []
    for s in range(40):
        lab, g = gmm(X, K, 100 + s, n_init=1)
        sizes = np.bincount(lab, minlength=K) / len(lab)
        ent = -(sizes * np.log(sizes + 1e-12)).sum()
        rows.append((score(D, lab)[0], g.score(X), ent, sizes.min()))
    res[d] = np.array(rows)
pickle.dump(res, open(os.environ.get("EXP", "/tmp/exp") + "/restarts.pkl", "wb"))
for w in [0, 0.5, 1, 2, 3, 5, 10]:
    picks = []
    for d in ALL:
        R = res[d]; crit = R[:, 1] + w * R[:, 2]
        picks.append(R[np.argmax(crit), 0])
    print(w, np.round(picks, 3), "dl mean %.3f worst %.3f" % (np.mean(picks[:4]), min(picks)))
