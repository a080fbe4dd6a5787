package testutil

import (
	"errors"
	"fmt"
	"strings"

	"github.com/onsi/gomega/types"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// BeInvalid matches an API server answer of 422 Invalid that names field and
// whose message for it contains message. It is how the API suites check that a
// validation rule is the one that refused an object, not just that something did.
func BeInvalid(field, message string) types.GomegaMatcher {
	return &invalidMatcher{field: field, message: message}
}

type invalidMatcher struct {
	field, message string
}

func (m *invalidMatcher) Match(actual any) (bool, error) {
	if actual == nil {
		return false, nil
	}
	err, ok := actual.(error)
	if !ok {
		return false, fmt.Errorf("BeInvalid expects an error, got %T", actual)
	}
	var status apierrors.APIStatus
	if !errors.As(err, &status) || !apierrors.IsInvalid(err) {
		return false, nil
	}
	details := status.Status().Details
	if details == nil {
		return false, nil
	}
	for _, cause := range details.Causes {
		if cause.Field == m.field && strings.Contains(cause.Message, m.message) {
			return true, nil
		}
	}
	return false, nil
}

func (m *invalidMatcher) FailureMessage(actual any) string {
	return fmt.Sprintf("expected an Invalid error on field %q containing %q, got:\n\t%v", m.field, m.message, describe(actual))
}

func (m *invalidMatcher) NegatedFailureMessage(actual any) string {
	return fmt.Sprintf("expected no Invalid error on field %q containing %q, got:\n\t%v", m.field, m.message, describe(actual))
}

func describe(actual any) string {
	var status apierrors.APIStatus
	if err, ok := actual.(error); ok && errors.As(err, &status) && status.Status().Details != nil {
		causes := make([]string, 0, len(status.Status().Details.Causes))
		for _, c := range status.Status().Details.Causes {
			causes = append(causes, fmt.Sprintf("%s: %s", c.Field, c.Message))
		}
		return strings.Join(causes, "\n\t")
	}
	return fmt.Sprint(actual)
}
