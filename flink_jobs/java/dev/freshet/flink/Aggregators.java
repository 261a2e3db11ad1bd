package dev.freshet.flink;

import java.io.IOException;
import java.math.BigDecimal;
import java.util.Arrays;

import org.apache.flink.core.memory.DataInputView;
import org.apache.flink.core.memory.DataOutputView;

/**
 * The aggregators of {@code freshet.aggregators}, with the same results bit for bit: exact sums rounded once
 * (Shewchuk partials, as {@code math.fsum}), {@code last} by (time, value), and {@code approx_distinct} exact up to
 * 128 values, then a HyperLogLog of 1024 registers fed the same 64-bit hashes (its small-range estimate calls
 * {@code Math.log}, which may differ from the C library's {@code log} in the last bit of a double, not of the float32
 * a delta carries). Accumulators are mutable plain
 * objects; an event's value arrives as a float and a hash, each aggregator reading the one it needs. Each one copies
 * and writes itself (a tag byte, then its fields) for {@link ItemWindowsSerializer}: Flink's heap state copies an
 * item's state on its first access after every checkpoint and writes all of it at every checkpoint.
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

        /** A deep copy: changing it never changes this one. */
        abstract Acc copy();

        /** The fields after the tag {@link #write} puts first. */
        abstract void writeFields(DataOutputView out) throws IOException;

        abstract void readFields(DataInputView in) throws IOException;

        /** Its index in {@link #NAMES}, the tag of its serialized form. */
        abstract int tag();

        /**
         * Folds {@code other} (of the same aggregation) into this one, as if its values had been added here; only
         * where {@link #mergesExactly} says the result cannot depend on how the values were grouped.
         */
        void merge(Acc other) {
            throw new UnsupportedOperationException(NAMES[tag()] + " accumulators are not merged");
        }

        final void write(DataOutputView out) throws IOException {
            out.writeByte(tag());
            writeFields(out);
        }
    }

    /** The aggregation names; an accumulator's serialized tag is its index here: never reorder. */
    static final String[] NAMES = {"count", "sum", "mean", "min", "max", "last", "approx_distinct"};

    /**
     * Whether merging accumulators gives bit for bit the result of adding every value to one: true for count, min,
     * max, last (integer or order-free selections) and approx_distinct (the sketch of a union is the register-wise
     * max of the sketches). Not for sum and mean: their partials are exact only while no intermediate sum overflows,
     * and whether one does (values near 1e308) depends on the grouping.
     */
    static boolean mergesExactly(String name) {
        return !"sum".equals(name) && !"mean".equals(name);
    }

    /** An accumulator as {@link Acc#write} wrote it. */
    static Acc read(DataInputView in) throws IOException {
        int tag = in.readByte();
        if (tag < 0 || tag >= NAMES.length) {
            throw new IOException("no aggregator has the tag " + tag);
        }
        Acc acc = initial(NAMES[tag]);
        acc.readFields(in);
        return acc;
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

        @Override void merge(Acc other) { n += ((Count) other).n; }

        @Override double result() { return (double) n; }

        @Override int tag() { return 0; }

        @Override Acc copy() {
            Count c = new Count();
            c.n = n;
            return c;
        }

        @Override void writeFields(DataOutputView out) throws IOException { out.writeLong(n); }

        @Override void readFields(DataInputView in) throws IOException { n = in.readLong(); }
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

        Partials copy() {
            Partials c = new Partials();
            c.p = Arrays.copyOf(p, Math.max(2, size));
            c.size = size;
            return c;
        }

        void write(DataOutputView out) throws IOException {
            out.writeInt(size);
            for (int i = 0; i < size; i++) {
                out.writeDouble(p[i]);
            }
        }

        void read(DataInputView in) throws IOException {
            size = in.readInt();
            p = new double[Math.max(2, size)];
            for (int i = 0; i < size; i++) {
                p[i] = in.readDouble();
            }
        }
    }

    static final class Sum extends Acc {
        Partials partials = new Partials();

        @Override void add(double number, long hash, long tsMs) { partials.grow(number); }

        @Override double result() { return partials.sum(); }

        @Override int tag() { return 1; }

        @Override Acc copy() {
            Sum c = new Sum();
            c.partials = partials.copy();
            return c;
        }

        @Override void writeFields(DataOutputView out) throws IOException { partials.write(out); }

        @Override void readFields(DataInputView in) throws IOException { partials.read(in); }
    }

    static final class Mean extends Acc {
        Partials partials = new Partials();
        long n;

        @Override void add(double number, long hash, long tsMs) { partials.grow(number); n++; }

        @Override double result() { return n == 0 ? Double.NaN : partials.sum() / n; }

        @Override int tag() { return 2; }

        @Override Acc copy() {
            Mean c = new Mean();
            c.partials = partials.copy();
            c.n = n;
            return c;
        }

        @Override void writeFields(DataOutputView out) throws IOException {
            partials.write(out);
            out.writeLong(n);
        }

        @Override void readFields(DataInputView in) throws IOException {
            partials.read(in);
            n = in.readLong();
        }
    }

    /** A value that may be absent: the state of min, max. */
    abstract static class OneValue extends Acc {
        boolean any;
        double value;

        @Override double result() { return any ? value : Double.NaN; }

        @Override void merge(Acc other) {
            OneValue o = (OneValue) other;
            if (o.any) { add(o.value, 0L, 0L); }
        }

        @Override Acc copy() {
            OneValue c = (OneValue) initial(NAMES[tag()]);
            c.any = any;
            c.value = value;
            return c;
        }

        @Override void writeFields(DataOutputView out) throws IOException {
            out.writeBoolean(any);
            out.writeDouble(value);
        }

        @Override void readFields(DataInputView in) throws IOException {
            any = in.readBoolean();
            value = in.readDouble();
        }
    }

    static final class Min extends OneValue {
        @Override void add(double number, long hash, long tsMs) {
            if (!any || number < value) { value = number; }
            any = true;
        }

        @Override int tag() { return 3; }
    }

    static final class Max extends OneValue {
        @Override void add(double number, long hash, long tsMs) {
            if (!any || number > value) { value = number; }
            any = true;
        }

        @Override int tag() { return 4; }
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

        @Override void merge(Acc other) {
            Last o = (Last) other;
            if (o.any) { add(o.value, 0L, o.tsMs); }
        }

        @Override int tag() { return 5; }

        @Override Acc copy() {
            Last c = new Last();
            c.any = any;
            c.tsMs = tsMs;
            c.value = value;
            return c;
        }

        @Override void writeFields(DataOutputView out) throws IOException {
            out.writeBoolean(any);
            out.writeLong(tsMs);
            out.writeDouble(value);
        }

        @Override void readFields(DataInputView in) throws IOException {
            any = in.readBoolean();
            tsMs = in.readLong();
            value = in.readDouble();
        }
    }

    /**
     * Exact distinct hashes up to {@link #EXACT_DISTINCT_LIMIT}, kept sorted in a {@code long[]} (no boxing: an
     * item's 1-day sliding window is 24 of these, copied at the first access after each checkpoint), then a
     * HyperLogLog of all of them.
     */
    static final class ApproxDistinct extends Acc {
        long[] exact = new long[4];
        int size;
        byte[] registers;

        @Override void add(double number, long hash, long tsMs) {
            if (registers != null) {
                observe(hash);
                return;
            }
            int at = Arrays.binarySearch(exact, 0, size, hash);
            if (at >= 0) {
                return;
            }
            if (size == EXACT_DISTINCT_LIMIT) {
                registers = new byte[HLL_REGISTERS];
                for (int i = 0; i < size; i++) { observe(exact[i]); }
                observe(hash);
                exact = null;
                size = 0;
                return;
            }
            if (size == exact.length) {
                exact = Arrays.copyOf(exact, 2 * size);
            }
            int insert = -at - 1;
            System.arraycopy(exact, insert, exact, insert + 1, size - insert);
            exact[insert] = hash;
            size++;
        }

        @Override void merge(Acc other) {
            ApproxDistinct o = (ApproxDistinct) other;
            if (o.registers == null) {
                for (int i = 0; i < o.size; i++) { add(0.0, o.exact[i], 0L); }
                return;
            }
            if (registers == null) {
                registers = new byte[HLL_REGISTERS];
                for (int i = 0; i < size; i++) { observe(exact[i]); }
                exact = null;
                size = 0;
            }
            for (int i = 0; i < HLL_REGISTERS; i++) {
                if (o.registers[i] > registers[i]) { registers[i] = o.registers[i]; }
            }
        }

        private void observe(long h) {
            int index = (int) (h >>> HLL_REST_BITS);
            long rest = h & ((1L << HLL_REST_BITS) - 1);
            int rank = HLL_REST_BITS - (64 - Long.numberOfLeadingZeros(rest)) + 1;
            if (rank > registers[index]) { registers[index] = (byte) rank; }
        }

        @Override double result() {
            if (registers == null) { return (double) size; }
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

        @Override int tag() { return 6; }

        @Override Acc copy() {
            ApproxDistinct c = new ApproxDistinct();
            c.exact = exact == null ? null : Arrays.copyOf(exact, Math.max(4, size));
            c.size = size;
            c.registers = registers == null ? null : registers.clone();
            return c;
        }

        /** The exact hashes (a count, then each, ascending), or -1 and the registers once past the exact limit. */
        @Override void writeFields(DataOutputView out) throws IOException {
            if (registers != null) {
                out.writeInt(-1);
                out.write(registers);
                return;
            }
            out.writeInt(size);
            for (int i = 0; i < size; i++) { out.writeLong(exact[i]); }
        }

        @Override void readFields(DataInputView in) throws IOException {
            int n = in.readInt();
            if (n < 0) {
                exact = null;
                size = 0;
                registers = new byte[HLL_REGISTERS];
                in.readFully(registers);
                return;
            }
            exact = new long[Math.max(4, n)];
            for (int i = 0; i < n; i++) { exact[i] = in.readLong(); }
            size = n;
        }
    }
}
