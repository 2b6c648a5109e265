package store

import "testing"

func TestHashLoginToken(t *testing.T) {
	// Values computed with Rocket.Chat's algorithm:
	// crypto.createHash('sha256').update(token).digest('base64').
	for token, want := range map[string]string{
		"secret": "K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=",
		"":       "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
	} {
		if got := HashLoginToken(token); got != want || len(got) != hashedTokenLen {
			t.Errorf("HashLoginToken(%q) = %s, want %s", token, got, want)
		}
	}
}
