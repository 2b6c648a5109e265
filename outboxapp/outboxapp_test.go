package outboxapp

import (
	"strings"
	"testing"
)

// The webhook's placeholders are expanded when the config loads; one that
// expands to nothing fails the load, naming it (never a secret).
func TestExpandWebhook(t *testing.T) {
	t.Setenv("OUTBOX_TEST_URL", "https://crm.example.com/hook?apikey=QUERY-SECRET")
	t.Setenv("OUTBOX_TEST_SECRET", "s3cret")
	t.Setenv("OUTBOX_TEST_EMPTY", "")
	for _, c := range []struct {
		name                string
		wh                  OutboxWebhook
		url, secret, errMsg string
	}{
		{"both from the environment", OutboxWebhook{URL: "{env.OUTBOX_TEST_URL}", Secret: "{env.OUTBOX_TEST_SECRET}"},
			"https://crm.example.com/hook?apikey=QUERY-SECRET", "s3cret", ""},
		{"unsigned", OutboxWebhook{URL: "http://h/", Unsigned: true}, "http://h/", "", ""},
		{"an unset secret", OutboxWebhook{URL: "http://h/", Secret: "{env.OUTBOX_TEST_UNSET}"}, "", "",
			"webhook: the secret {env.OUTBOX_TEST_UNSET} is empty once expanded (is the variable set?); write 'unsigned' to send unsigned webhooks deliberately"},
		{"an empty secret", OutboxWebhook{URL: "http://h/", Secret: "{env.OUTBOX_TEST_EMPTY}"}, "", "",
			"webhook: the secret {env.OUTBOX_TEST_EMPTY} is empty once expanded"},
		{"an unset URL", OutboxWebhook{URL: "{env.OUTBOX_TEST_UNSET}", Secret: "s"}, "", "",
			"webhook: the URL {env.OUTBOX_TEST_UNSET} is empty once expanded (is the variable set?)"},
		{"a URL without its host", OutboxWebhook{URL: "https://{env.OUTBOX_TEST_UNSET}/hook?apikey=QUERY-SECRET", Secret: "s"}, "", "",
			"webhook: https:///hook is not an http or https URL with a host"},
		{"not http", OutboxWebhook{URL: "ftp://h/x", Secret: "s"}, "", "", "webhook: ftp://h/x is not an http or https URL with a host"},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := &Outbox{DSN: "x@/y", Webhook: &c.wh}
			url, secret, err := o.expandWebhook()
			switch {
			case c.errMsg == "" && (err != nil || url != c.url || string(secret) != c.secret):
				t.Fatalf("got %q, %q, %v; want %q, %q", url, secret, err, c.url, c.secret)
			case c.errMsg != "" && (err == nil || !strings.Contains(err.Error(), c.errMsg)):
				t.Fatalf("got %v, want an error containing %q", err, c.errMsg)
			case err != nil && strings.Contains(err.Error(), "QUERY-SECRET"):
				t.Fatalf("the URL's query is in the error: %v", err)
			}
		})
	}
}
