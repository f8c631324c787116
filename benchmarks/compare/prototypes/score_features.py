import os, sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
from harness import *
suf = sys.argv[1]; dss = sys.argv[2].split(",") if len(sys.argv) > 2 else ALL
res = []
for d in dss:
    D = load(d, suf); X = smooth(D["pcs"], D["nb"])
    out = [score(D, gmm(X, int(D["K"]), s)[0])[0] for s in range(3)]
    res.append(np.mean(out))
    print(" ", d, np.round(out, 3), flush=True)
print(suf, np.round(res, 3), "dl mean %.3f worst %.3f" % (np.mean(res[:4]), min(res[:4])), flush=True)
