package dev.freshet.flink;

import java.math.BigDecimal;
import java.math.BigInteger;
import java.math.MathContext;
import java.math.RoundingMode;
import java.nio.charset.StandardCharsets;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;

/**
 * JSON values read the way Python reads them after {@code json.loads}: as a float ({@code _number} in
 * {@code freshet.aggregators}) and as the stable 64-bit hash of {@code stable_hash64}, which needs Python's
 * {@code str(int)} and {@code repr(float)} spelled exactly.
 */
final class PyValues {
    private PyValues() {}

    /** {@code float(value) + 0.0}: a boolean is 0 or 1, an integer is rounded to nearest, -0.0 reads as 0.0. */
    static double number(JsonNode value) {
        if (value.isBoolean()) {
            return value.booleanValue() ? 1.0 : 0.0;
        }
        if (value.isIntegralNumber()) {
            return value.bigIntegerValue().doubleValue() + 0.0;
        }
        if (value.isNumber()) {
            return value.doubleValue() + 0.0;
        }
        throw new IllegalArgumentException("a numeric aggregation needs a number, got " + value);
    }

    /** {@code stable_hash64}: blake2b of "s" + the UTF-8 string, "i" + the integer, or "f" + repr(float). */
    static long stableHash(JsonNode value) {
        String text;
        if (value.isTextual()) {
            text = "s" + value.textValue();
        } else if (value.isBoolean()) {
            text = value.booleanValue() ? "i1" : "i0";
        } else if (value.isIntegralNumber()) {
            text = "i" + value.bigIntegerValue();
        } else if (value.isNumber()) {
            double d = value.doubleValue();
            text = isInteger(d) ? "i" + new BigDecimal(d).toBigInteger() : "f" + repr(d);
        } else {
            throw new IllegalArgumentException("approx_distinct needs a string, number or boolean, got " + value);
        }
        return Blake2b64.hash(text.getBytes(StandardCharsets.UTF_8));
    }

    private static boolean isInteger(double d) {
        return !Double.isInfinite(d) && !Double.isNaN(d) && d == Math.rint(d);
    }

    /** Python's {@code repr(float)}: the shortest digits that read back as {@code d}, in Python's layout. */
    static String repr(double d) {
        if (Double.isNaN(d)) {
            return "nan";
        }
        if (Double.isInfinite(d)) {
            return d > 0 ? "inf" : "-inf";
        }
        if (d == 0.0) {
            return (1 / d < 0) ? "-0.0" : "0.0";
        }
        BigDecimal exact = new BigDecimal(d);
        BigDecimal shortest = exact;
        for (int p = 1; p <= 17; p++) {
            BigDecimal candidate = exact.round(new MathContext(p, RoundingMode.HALF_EVEN));
            if (candidate.doubleValue() == d) {
                shortest = candidate;
                break;
            }
        }
        shortest = shortest.stripTrailingZeros();
        String digits = shortest.unscaledValue().abs().toString();
        int decpt = digits.length() - shortest.scale();
        return (d < 0 ? "-" : "") + layout(digits, decpt);
    }

    /** Python's {@code float_repr_style = 'short'} layout of digits d1d2... with value 0.d1d2... * 10**decpt. */
    private static String layout(String digits, int decpt) {
        if (decpt <= -4 || decpt > 16) {
            String mantissa = digits.length() == 1 ? digits : digits.charAt(0) + "." + digits.substring(1);
            int exp = decpt - 1;
            String e = String.valueOf(Math.abs(exp));
            return mantissa + "e" + (exp < 0 ? "-" : "+") + (e.length() < 2 ? "0" + e : e);
        }
        if (decpt <= 0) {
            return "0." + "0".repeat(-decpt) + digits;
        }
        if (decpt >= digits.length()) {
            return digits + "0".repeat(decpt - digits.length()) + ".0";
        }
        return digits.substring(0, decpt) + "." + digits.substring(decpt);
    }

    /** Whether an integer JSON value lies in [low, high). */
    static boolean within(JsonNode integral, BigInteger low, BigInteger high) {
        BigInteger v = integral.bigIntegerValue();
        return v.compareTo(low) >= 0 && v.compareTo(high) < 0;
    }
}
