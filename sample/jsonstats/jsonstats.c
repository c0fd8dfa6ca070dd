/*
 * jsonstats: a WASI command ("wasi" ABI) sample for Nebula-Edge.
 *
 * Reads exactly one JSON value from stdin and writes one JSON object to
 * stdout with the count, sum, minimum and maximum of every number found
 * anywhere in it (object values and array elements, at any depth; numbers
 * inside strings, including object keys, do not count):
 *
 *   {"values":[1,2,3.5]}        -> {"count":3,"sum":6.5,"min":1,"max":3.5}
 *   {"a":"12","b":[{"c":-4}]}   -> {"count":1,"sum":-4,"min":-4,"max":-4}
 *   "no numbers"                -> {"count":0,"sum":0,"min":null,"max":null}
 *
 * Whole numbers below 2^53 are printed as integers (1000, not 1e+03); other
 * numbers in the shortest "%g" form that reads back as the same double
 * (0.30000000000000004, 1e+300). A sum/min/max that is not finite (input
 * 1e400, or a sum that overflows) is null. Summation is plain left-to-right
 * double addition.
 *
 * The input is validated against the JSON grammar (RFC 8259): strings with
 * escapes (\" \\ \/ \b \f \n \r \t \uXXXX) are skipped correctly, control
 * characters in strings, trailing commas, leading zeros, bare words and
 * anything after the value (other than whitespace) are rejected. Bytes >= 0x80
 * inside strings are passed over without UTF-8 validation. Nesting deeper
 * than MAX_DEPTH is rejected rather than overflowing the Wasm stack.
 *
 * Exit status: 0 on success; 2 on invalid input (message on stderr);
 * 1 on an I/O or out-of-memory error.
 *
 * Build: python -m ziglang cc --target=wasm32-wasi -O2 -o jsonstats.wasm jsonstats.c
 * (or run `make samples` / `python sample/build.py`).
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 512

static const char *buf;  /* the whole input, NUL-terminated */
static size_t len;       /* input length, without the NUL */
static size_t pos;       /* parse position */

static size_t count;
static double sum, min, max;

static void fail(const char *what) {
    fprintf(stderr, "jsonstats: invalid JSON at byte %zu: %s\n", pos, what);
    exit(2);
}

static void skip_ws(void) {
    while (pos < len && (buf[pos] == ' ' || buf[pos] == '\t' ||
                         buf[pos] == '\n' || buf[pos] == '\r'))
        pos++;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int is_hex(char c) {
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* At an opening quote: skip to just past the closing quote. */
static void parse_string(void) {
    pos++; /* opening quote */
    for (;;) {
        if (pos >= len) fail("unterminated string");
        unsigned char c = (unsigned char)buf[pos];
        if (c == '"') { pos++; return; }
        if (c < 0x20) fail("control character in string");
        if (c != '\\') { pos++; continue; }
        pos++; /* backslash */
        if (pos >= len) fail("unterminated string");
        switch (buf[pos]) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
            pos++;
            break;
        case 'u':
            pos++;
            for (int i = 0; i < 4; i++, pos++)
                if (pos >= len || !is_hex(buf[pos])) fail("bad \\u escape in string");
            break;
        default:
            fail("bad escape in string");
        }
    }
}

static void parse_number(void) {
    size_t start = pos;
    if (buf[pos] == '-') pos++;
    if (pos < len && buf[pos] == '0') {
        pos++;
    } else if (pos < len && buf[pos] >= '1' && buf[pos] <= '9') {
        while (pos < len && is_digit(buf[pos])) pos++;
    } else {
        fail("bad number");
    }
    if (pos < len && buf[pos] == '.') {
        pos++;
        if (pos >= len || !is_digit(buf[pos])) fail("bad number: digit expected after '.'");
        while (pos < len && is_digit(buf[pos])) pos++;
    }
    if (pos < len && (buf[pos] == 'e' || buf[pos] == 'E')) {
        pos++;
        if (pos < len && (buf[pos] == '+' || buf[pos] == '-')) pos++;
        if (pos >= len || !is_digit(buf[pos])) fail("bad number: digit expected in exponent");
        while (pos < len && is_digit(buf[pos])) pos++;
    }
    /* The span [start, pos) is a valid JSON number, hence a valid strtod
     * input; cut it off so strtod cannot read further (e.g. "0x1"). */
    char *b = (char *)buf, saved = b[pos];
    b[pos] = '\0';
    double v = strtod(b + start, NULL);
    b[pos] = saved;

    if (count == 0) {
        min = max = v;
    } else {
        if (v < min) min = v;
        if (v > max) max = v;
    }
    sum += v;
    count++;
}

static void parse_literal(const char *word) {
    size_t n = strlen(word);
    if (len - pos < n || memcmp(buf + pos, word, n) != 0) fail("unexpected character");
    pos += n;
}

static void parse_value(int depth);

static void parse_array(int depth) {
    pos++; /* [ */
    skip_ws();
    if (pos < len && buf[pos] == ']') { pos++; return; }
    for (;;) {
        parse_value(depth + 1);
        skip_ws();
        if (pos >= len) fail("unterminated array");
        if (buf[pos] == ',') { pos++; continue; }
        if (buf[pos] == ']') { pos++; return; }
        fail("',' or ']' expected");
    }
}

static void parse_object(int depth) {
    pos++; /* { */
    skip_ws();
    if (pos < len && buf[pos] == '}') { pos++; return; }
    for (;;) {
        skip_ws();
        if (pos >= len || buf[pos] != '"') fail("string key expected");
        parse_string();
        skip_ws();
        if (pos >= len || buf[pos] != ':') fail("':' expected");
        pos++;
        parse_value(depth + 1);
        skip_ws();
        if (pos >= len) fail("unterminated object");
        if (buf[pos] == ',') { pos++; continue; }
        if (buf[pos] == '}') { pos++; return; }
        fail("',' or '}' expected");
    }
}

static void parse_value(int depth) {
    if (depth > MAX_DEPTH) fail("nesting too deep");
    skip_ws();
    if (pos >= len) fail("value expected, got end of input");
    char c = buf[pos];
    switch (c) {
    case '{': parse_object(depth); break;
    case '[': parse_array(depth); break;
    case '"': parse_string(); break;
    case 't': parse_literal("true"); break;
    case 'f': parse_literal("false"); break;
    case 'n': parse_literal("null"); break;
    default:
        if (c == '-' || is_digit(c)) parse_number();
        else fail("value expected");
    }
}

/* Shortest "%.*g" form that reads back as the same double; null if not finite. */
static void print_number(double v) {
    if (!isfinite(v)) {
        fputs("null", stdout);
        return;
    }
    char s[40];
    /* Whole numbers below 2^53 (all exactly representable) as plain integers:
     * 1000 rather than the "%g" form 1e+03. */
    if (fabs(v) < 9007199254740992.0 && v == (double)(long long)v) {
        snprintf(s, sizeof s, "%.0f", v);
        fputs(s, stdout);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(s, sizeof s, "%.*g", prec, v);
        if (strtod(s, NULL) == v) break;
    }
    fputs(s, stdout);
}

static void read_stdin(void) {
    size_t cap = 4096;
    char *b = malloc(cap);
    if (!b) { fputs("jsonstats: out of memory\n", stderr); exit(1); }
    for (;;) {
        if (cap - len < 2) {
            cap *= 2;
            char *nb = realloc(b, cap);
            if (!nb) { fputs("jsonstats: out of memory\n", stderr); exit(1); }
            b = nb;
        }
        size_t n = fread(b + len, 1, cap - len - 1, stdin);
        len += n;
        if (n == 0) {
            if (ferror(stdin)) { fputs("jsonstats: cannot read stdin\n", stderr); exit(1); }
            break;
        }
    }
    b[len] = '\0';
    buf = b;
}

int main(void) {
    read_stdin();
    parse_value(0);
    skip_ws();
    if (pos != len) fail("unexpected data after the JSON value");

    printf("{\"count\":%zu,\"sum\":", count);
    print_number(sum);
    fputs(",\"min\":", stdout);
    if (count) print_number(min); else fputs("null", stdout);
    fputs(",\"max\":", stdout);
    if (count) print_number(max); else fputs("null", stdout);
    fputs("}\n", stdout);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fputs("jsonstats: cannot write stdout\n", stderr);
        return 1;
    }
    return 0;
}
