package dev.freshet.flink;

import java.math.BigDecimal;
import java.util.Arrays;
import java.util.HashSet;

/**
 * The aggregators of {@code freshet.aggregators}, with the same results bit for bit: exact sums rounded once
 * (Shewchuk partials, as {@code math.fsum}), {@code last} by (time, value), and {@code approx_distinct} exact up to
 * 128 values, then a HyperLogLog of 1024 registers fed the same 64-bit hashes (its small-range estimate calls
 * {@code Math.log}, which may differ from the C library's {@code log} in the last bit of a double, not of the float32
 * a delta carries). Accumulators are mutable plain
 * objects (Flink keyed state, serialized by Kryo); an event's value arrives as a float and a hash, each aggregator
 * reading the one it needs.
 */
final class Aggregators {
    static final int EXACT_DISTINCT_LIMIT = 128;
    static final int HLL_PRECISION = 10;
    static final int HLL_REGISTERS = 1 << HLL_PRECISION;
    static final int HLL_REST_BITS = 64 - HLL_PRECISION;
    static final double HLL_ALPHA = 0.7213 / (1 + 1.079 / HLL_REGISTERS);

    private Aggregators() {}

    /** One window's accumulator. */
    abstract static class Acc {
        abstract void add(double number, long hash, long tsMs);

        abstract double result();
    }

    /** A fresh accumulator of the aggregation called {@code name}. */
    static Acc initial(String name) {
        switch (name) {
            case "count": return new Count();
            case "sum": return new Sum();
            case "mean": return new Mean();
            case "min": return new Min();
            case "max": return new Max();
            case "last": return new Last();
            case "approx_distinct": return new ApproxDistinct();
            default: throw new IllegalArgumentException("unknown aggregation " + name);
        }
    }

    static final class Count extends Acc {
        long n;

        @Override void add(double number, long hash, long tsMs) { n++; }

        @Override double result() { return (double) n; }
    }

    /** An exact sum as non-overlapping doubles of increasing magnitude (the inner loop of math.fsum). */
    static final class Partials {
        double[] p = new double[2];
        int size;

        void grow(double x) {
            int j = 0;
            for (int i = 0; i < size; i++) {
                double y = p[i];
                if (Math.abs(x) < Math.abs(y)) {
                    double t = x; x = y; y = t;
                }
                double hi = x + y;
                double lo = y - (hi - x);
                if (lo != 0.0) {
                    p[j++] = lo;
                }
                x = hi;
            }
            if (j == p.length) {
                p = Arrays.copyOf(p, 2 * p.length);
            }
            p[j++] = x;
            size = j;
        }

        /** The exact sum rounded once to the nearest double (what math.fsum returns), -0.0 read as 0.0. */
        double sum() {
            BigDecimal exact = BigDecimal.ZERO;
            double naive = 0.0;
            for (int i = 0; i < size; i++) {
                if (!Double.isFinite(p[i])) {
                    naive += p[i];
                    continue;
                }
                exact = exact.add(new BigDecimal(p[i]));
            }
            return naive != 0.0 || Double.isNaN(naive) ? naive : exact.doubleValue() + 0.0;
        }
    }

    static final class Sum extends Acc {
        Partials partials = new Partials();

        @Override void add(double number, long hash, long tsMs) { partials.grow(number); }

        @Override double result() { return partials.sum(); }
    }

    static final class Mean extends Acc {
        Partials partials = new Partials();
        long n;

        @Override void add(double number, long hash, long tsMs) { partials.grow(number); n++; }

        @Override double result() { return n == 0 ? Double.NaN : partials.sum() / n; }
    }

    static final class Min extends Acc {
        boolean any;
        double value;

        @Override void add(double number, long hash, long tsMs) {
            if (!any || number < value) { value = number; }
            any = true;
        }

        @Override double result() { return any ? value : Double.NaN; }
    }

    static final class Max extends Acc {
        boolean any;
        double value;

        @Override void add(double number, long hash, long tsMs) {
            if (!any || number > value) { value = number; }
            any = true;
        }

        @Override double result() { return any ? value : Double.NaN; }
    }

    /** The value of the greatest event time; among equal times the greatest value (Python's tuple max). */
    static final class Last extends Acc {
        boolean any;
        long tsMs;
        double value;

        @Override void add(double number, long hash, long ts) {
            if (!any || ts > tsMs || (ts == tsMs && number > value)) {
                tsMs = ts;
                value = number;
            }
            any = true;
        }

        @Override double result() { return any ? value : Double.NaN; }
    }

    static final class ApproxDistinct extends Acc {
        HashSet<Long> exact = new HashSet<>();
        byte[] registers;

        @Override void add(double number, long hash, long tsMs) {
            if (registers == null) {
                if (exact.add(hash) && exact.size() > EXACT_DISTINCT_LIMIT) {
                    registers = new byte[HLL_REGISTERS];
                    for (long h : exact) { observe(h); }
                    exact = null;
                }
                return;
            }
            observe(hash);
        }

        private void observe(long h) {
            int index = (int) (h >>> HLL_REST_BITS);
            long rest = h & ((1L << HLL_REST_BITS) - 1);
            int rank = HLL_REST_BITS - (64 - Long.numberOfLeadingZeros(rest)) + 1;
            if (rank > registers[index]) { registers[index] = (byte) rank; }
        }

        @Override double result() {
            if (registers == null) { return (double) exact.size(); }
            // sum of 2**-r, exact (as math.fsum): every term is a multiple of 2**-55
            java.math.BigInteger scaled = java.math.BigInteger.ZERO;
            int zeros = 0;
            for (byte r : registers) {
                scaled = scaled.add(java.math.BigInteger.ONE.shiftLeft(HLL_REST_BITS + 1 - r));
                if (r == 0) { zeros++; }
            }
            double total = scaled.doubleValue() * Math.scalb(1.0, -(HLL_REST_BITS + 1));
            double raw = HLL_ALPHA * ((double) HLL_REGISTERS * HLL_REGISTERS) / total;
            if (raw <= 2.5 * HLL_REGISTERS && zeros > 0) {
                return HLL_REGISTERS * Math.log((double) HLL_REGISTERS / zeros);
            }
            return raw;
        }
    }
}
