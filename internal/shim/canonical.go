package shim

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"slices"
	"strings"
)

// canonicalJSON writes a JSON value in one spelling per value: compact, object
// keys sorted at every depth, strings escaped one way, and numbers as number
// says. Two values with the same canonical form are the same input however
// their keys were ordered or their strings escaped. An object with a key twice
// is refused with a *duplicateKeyError: which of its values counts depends on
// who reads it.
func canonicalJSON(data []byte, number func(json.Number) string) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	value, err := readValue(dec)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("trailing data after a JSON value")
	}
	var out bytes.Buffer
	value.write(&out, number)
	return out.Bytes(), nil
}

// numberAsWritten keeps a number's text: 1 and 1.0 differ, as they may for
// the worker that reads them.
func numberAsWritten(n json.Number) string { return string(n) }

// numberExact spells a number as the decimal it denotes, digits without
// leading or trailing zeros and a power of ten (1, 1.0 and 10e-1 are all
// "1e0"), so numbers are equal exactly when their values are, at any number of
// digits. The exponent is a big.Int: 1e999999999 costs its digits, not 10^999999999.
func numberExact(n json.Number) string {
	text, sign := string(n), ""
	if rest, negative := strings.CutPrefix(text, "-"); negative {
		text, sign = rest, "-"
	}
	mantissa, exponent, _ := strings.Cut(strings.ToLower(text), "e")
	whole, fraction, _ := strings.Cut(mantissa, ".")
	digits := strings.TrimLeft(whole+fraction, "0")
	significant := strings.TrimRight(digits, "0")
	if significant == "" {
		return "0"
	}
	power := new(big.Int)
	if exponent != "" {
		if _, ok := power.SetString(exponent, 10); !ok {
			return string(n) // not a JSON number; the decoder lets none through
		}
	}
	power.Sub(power, big.NewInt(int64(len(fraction))))
	power.Add(power, big.NewInt(int64(len(digits)-len(significant))))
	return sign + significant + "e" + power.String()
}

// inputHash is the value of inferencev1alpha1.AnnotationInputHash for an input's canonical form.
func inputHash(canonical []byte) string {
	sum := sha256.Sum256(canonical)
	return hex.EncodeToString(sum[:])
}

// sameInput reports whether a stored input holds the same numbers, strings
// and structure as a sent one, numbers compared as exact decimals: the API
// server may have rewritten how the stored one is spelt, never (short of
// float64 rounding, which makes them differ) what it says.
func sameInput(stored, sent []byte) bool {
	if len(stored) == 0 || len(sent) == 0 {
		return len(stored) == len(sent)
	}
	a, err := canonicalJSON(stored, numberExact)
	if err != nil {
		return false
	}
	b, err := canonicalJSON(sent, numberExact)
	return err == nil && bytes.Equal(a, b)
}

type duplicateKeyError struct{ key string }

func (e *duplicateKeyError) Error() string {
	return fmt.Sprintf("key %q appears twice in one object", e.key)
}

// jsonNode is a decoded JSON value that keeps numbers as written and object
// members in a list, so nothing is lost before it is written canonically.
type jsonNode struct {
	token   any // json.Number, string, bool or nil for scalars; json.Delim for arrays and objects
	keys    []string
	members []*jsonNode
}

func readValue(dec *json.Decoder) (*jsonNode, error) {
	token, err := dec.Token()
	if err != nil {
		return nil, err
	}
	v := &jsonNode{token: token}
	delim, composite := token.(json.Delim)
	if !composite {
		return v, nil
	}
	for dec.More() {
		if delim == '{' {
			token, err := dec.Token()
			if err != nil {
				return nil, err
			}
			key, _ := token.(string) // the decoder answers an error for any other key
			v.keys = append(v.keys, key)
		}
		member, err := readValue(dec)
		if err != nil {
			return nil, err
		}
		v.members = append(v.members, member)
	}
	if _, err := dec.Token(); err != nil { // the closing delimiter
		return nil, err
	}
	if delim == '{' {
		return v, v.sortMembers()
	}
	return v, nil
}

// sortMembers orders an object's members by key.
func (v *jsonNode) sortMembers() error {
	order := make([]int, len(v.keys))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(i, j int) int { return strings.Compare(v.keys[i], v.keys[j]) })
	keys, members := make([]string, len(order)), make([]*jsonNode, len(order))
	for n, i := range order {
		keys[n], members[n] = v.keys[i], v.members[i]
		if n > 0 && keys[n] == keys[n-1] {
			return &duplicateKeyError{key: keys[n]}
		}
	}
	v.keys, v.members = keys, members
	return nil
}

func (v *jsonNode) write(out *bytes.Buffer, number func(json.Number) string) {
	switch t := v.token.(type) {
	case json.Delim:
		closing := byte(']')
		if t == '{' {
			closing = '}'
		}
		out.WriteByte(byte(t))
		for i, member := range v.members {
			if i > 0 {
				out.WriteByte(',')
			}
			if t == '{' {
				writeString(out, v.keys[i])
				out.WriteByte(':')
			}
			member.write(out, number)
		}
		out.WriteByte(closing)
	case json.Number:
		out.WriteString(number(t))
	case string:
		writeString(out, t)
	case bool:
		fmt.Fprint(out, t)
	default:
		out.WriteString("null")
	}
}

func writeString(out *bytes.Buffer, s string) {
	quoted, _ := json.Marshal(s) // a string always marshals
	out.Write(quoted)
}
