# Reference values for the judge tests in crates/agent-health/src/judge.rs (run: python3 scripts/judge-reference.py;
# needs scipy and numpy from PyPI): scipy's Mann-Whitney U (asymptotic, continuity
# correction) and an independent numpy implementation of the Hodges-Lehmann shift and its interval.
import numpy as np
from scipy.stats import mannwhitneyu, norm
cases = {
 "distinct": ([1.1, 2.3, 3.5, 4.2, 5.9, 6.1, 7.7], [0.5, 0.9, 1.4, 2.0, 2.2, 3.1]),
 "ties": ([3, 3, 4, 5, 5, 5, 6, 7, 8, 8], [1, 2, 3, 3, 4, 4, 5, 5, 6, 6, 6, 7]),
 "shifted": ([10.2, 11.1, 9.8, 10.9, 12.0, 11.4, 10.7, 11.9, 10.1, 11.3, 12.2, 10.8],
             [9.1, 8.7, 9.9, 8.8, 9.4, 10.0, 9.2, 8.9, 9.6, 9.3, 9.0, 9.8]),
}
for name, (x, y) in cases.items():
    r = mannwhitneyu(x, y, alternative="two-sided", method="asymptotic", use_continuity=True)
    d = np.sort(np.subtract.outer(np.array(x, float), np.array(y, float)).ravel())
    m, n = len(x), len(y)
    z = norm.ppf(0.975)
    k = int(np.floor(m * n / 2 - z * np.sqrt(m * n * (m + n + 1) / 12)))
    print(name, "U", r.statistic, "p", repr(r.pvalue), "shift", np.median(d), "lower", d[k], "upper", d[m * n - 1 - k])
