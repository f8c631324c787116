import os, sys; sys.path.insert(0, __import__("os").path.dirname(__file__))
from harness import *
def run(name, f, npc=30):
    res = []
    for d in ALL:
        D = load(d); X = f(D["pcs"][:, :npc], D["nb"])
        out = [score(D, gmm(X, int(D["K"]), s)[0])[0] for s in range(2)]
        res.append(np.mean(out))
    print(name, npc, np.round(res, 3), "dl mean %.3f worst %.3f" % (np.mean(res[:4]), min(res[:4])), flush=True)
run("x|s1", lambda x, nb: np.hstack([x, smooth(x, nb)]), 15)
run("s1|s2", lambda x, nb: np.hstack([smooth(x, nb), smooth(smooth(x, nb), nb)]), 15)
run("s2", lambda x, nb: smooth(smooth(x, nb), nb), 30)
run("s1+0.5s2", lambda x, nb: smooth(x, nb)*0.5 + 0.5*smooth(smooth(x, nb), nb), 30)
