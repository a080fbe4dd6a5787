package testutil

import (
	"github.com/onsi/gomega"
	"github.com/onsi/gomega/types"
)

// HaveCondition matches a list of metav1.Conditions that holds one of
// conditionType with reason, whose other fields match also:
//
//	Expect(ir.Status.Conditions).To(HaveCondition(ConditionComplete, ReasonJobDeleted,
//		HaveField("Status", metav1.ConditionTrue)))
func HaveCondition(conditionType, reason string, also ...types.GomegaMatcher) types.GomegaMatcher {
	fields := append([]types.GomegaMatcher{gomega.HaveField("Type", conditionType), gomega.HaveField("Reason", reason)}, also...)
	return gomega.ContainElement(gomega.SatisfyAll(fields...))
}
